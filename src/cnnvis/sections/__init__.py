"""Report sections: each module defines SECTION = cnnvis.report.Section(...)."""
