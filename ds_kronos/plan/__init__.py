"""Capacity planning: per-rank memory of a training configuration and the least-sharded one that fits a device."""

from ds_kronos.plan.counts import ModelCounts, model_counts
from ds_kronos.plan.memory import MemoryEstimate, estimate
from ds_kronos.plan.planner import DsConfigChoice, Plan, PlanRequest, Recommendation, ds_config_for, plan, recommend
from ds_kronos.plan.setup import Setup

__all__ = ["DsConfigChoice", "MemoryEstimate", "ModelCounts", "Plan", "PlanRequest", "Recommendation", "Setup",
           "ds_config_for", "estimate", "model_counts", "plan", "recommend"]
