"""Experiment configs: each file's ``get_config()`` returns an ml-collections ``ConfigDict``.

A config inherits by importing its parent (``from configs import sbpn_coco``): ``train.py`` puts
the repository root on ``sys.path``, and pytest's ``pythonpath`` does for the tests.
"""
