"""The network: parameters and the model file, cells, output layers, the model, the optimiser."""
