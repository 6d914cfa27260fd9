"""deepfake-cl: keep one deepfake detector current with continual learning."""
