"""The suite's YAML configs (pretraining, detection, tables), installed as package data.

Code finds them with ``mocobench.resources.config_path``, never by a path relative to a source file.
"""
