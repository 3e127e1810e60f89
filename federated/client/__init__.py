"""The client role of a campaign: the ClientApp, local training, DP-SGD privacy, the device's data."""
