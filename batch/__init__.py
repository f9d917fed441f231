"""Offline batch inference with Ray Data on the engines the YAML configures
(``deploy_app.py batch``)."""
