"""Report section: Zeiler & Fergus deconvnet panels (see sections/attribution.py)."""

from cnnvis.report import Section
from cnnvis.sections.attribution import render_deconv

SECTION = Section("deconv", "Deconvnet (Zeiler & Fergus)", render_deconv, order=42,
                  description="The strongest channels of each layer projected back to pixel space.")
