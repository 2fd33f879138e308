"""Schedulers (parallel, cascade) and executors (serial, local processes) for whole models;
Ray and checkpoint/resume come with the distributed issue."""
