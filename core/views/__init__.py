"""Every Altair spec and HTML snippet the pages draw; the only part of core that imports altair."""
