"""Schedulers (parallel, cascade), executors (local processes, Ray) and checkpoint/resume.

Filled in by the whole-model and distributed issues; the single-layer API does not need it.
"""
