"""The Zoho CRM client layer: OAuth (``auth``), the un-enrol call and its answers (``api``), and
the org's cadences (``cadences``)."""
