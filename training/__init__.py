"""Training, ONNX export with parity check, evaluation and registration into ``models/``.

Needs the ``train`` extra (torch, MONAI, scikit-learn, matplotlib); preprocessing comes from
``serving.imaging.preprocess`` so training and serving see identical pixels.
"""
