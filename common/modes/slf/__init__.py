"""The `slf` mode: split learning with layer freezing over VQ-VAE DeepJSCC transceivers and a K-ary DMC."""
