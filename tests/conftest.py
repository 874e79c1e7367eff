"""Test configuration. Qt must be told to run without a screen before it is imported."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
