"""Platform adapters: each turns platform events into `Incoming` and engine events into platform calls."""
