"""The bound engine: a ConvNODE as run unrolled into layers (unrolled.py), each layer type implementing every rule
once (layers.py), the stages over them (local.py, crown.py, linear.py, tight.py), the global Lipschitz bound
(lipschitz.py), radii and float32 round-off (radius.py, roundoff.py), the falsifiers (attacks.py) and the certified
training objectives (objectives.py). See certify/__init__.py for the map; nothing here imports the application."""
