"""The development loop around honcho: supervised roles, their control channel, their children."""
