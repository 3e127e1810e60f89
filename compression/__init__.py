"""From a trained model to signed bundles per device class: export, (later) quantize, bundle, sign."""
