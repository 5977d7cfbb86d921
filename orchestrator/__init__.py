"""Orchestrator: the central app server of an infrastructure monitoring platform."""

__version__ = "0.1.0"
