"""systemd integration: the sd_notify wrapper (notify.py) and the unit file the
installer renders (unit.py). The daemon decides *when* to notify; this package
only knows *how*."""
