#!/usr/bin/env python
"""Train the reference models of ``onnxq.models`` (seeded; writes onnxq/models/weights/<name>.pt).

    python scripts/train_reference_models.py [--models pointnext,centerpoint,bevfusion,vit]
"""

import sys

from onnxq.models.train import main

if __name__ == "__main__":
    sys.exit(main())
