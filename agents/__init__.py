"""Everything that knows Stable-Baselines3: the VecEnv adapter, policy guidance, plan-following
learners, and (on top) the coordinator and CLI."""
from agents.env_factory import make_imagined_vec_env
from agents.plan_following import ImaginationA2C, ImaginationPPO, PlanFollowingPolicy
from agents.sb3_vec_env import ImaginedSB3VecEnv

__all__ = ["ImaginationA2C", "ImaginationPPO", "ImaginedSB3VecEnv", "PlanFollowingPolicy",
           "make_imagined_vec_env"]
