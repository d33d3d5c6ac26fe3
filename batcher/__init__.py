"""batcher: un-enroll Zoho CRM records from cadences in bulk, exactly and resumably."""

__version__ = "0.1.0"
