"""Sweep reports: configurations of training runs compared over seeds (`lrm-fast-report`)."""
