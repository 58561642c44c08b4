"""neurossm-app: a BIDS App for NeuroSSM brain-state classification and CPA explanations."""

__version__ = "0.1.0"
