"""Model packages, registry, reference models and the synthetic studies they are trained on."""
