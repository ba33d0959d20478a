"""osad: open-set adversarial defense in PyTorch.

Train classifiers that stay accurate under adversarial attack and recognise
images of classes never seen in training, even when those are attacked:
the Open-Set Defense Network (OSDN, ECCV 2020), its baselines and a rigorous
open-set robustness evaluation.
"""

__version__ = "0.1.0"
