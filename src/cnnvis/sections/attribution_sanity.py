"""Report section: Adebayo et al. sanity check (see sections/attribution.py)."""

from cnnvis.report import Section
from cnnvis.sections.attribution import render_sanity

SECTION = Section("sanity", "Sanity check for saliency maps", render_sanity, order=44,
                  description="Do the maps depend on the learned weights? (Adebayo et al. 2018)")
