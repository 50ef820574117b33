"""SB3 PPO for HalfCheetah-v4, trained in imagination.
Twin of model_free_ppo.py: `diff` the two to see what makes a learner train in imagination.

    python examples/imagination_ppo.py --steps 5000
"""
import argparse

import gymnasium as gym
import torch
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from agents import ImaginationPPO as PPO  # was: from stable_baselines3 import PPO
from agents import make_imagined_vec_env
from imagined_env.pretrained import pretrained_paths

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--steps", type=int, default=5_000, help="steps to learn from [default 5000]")
shipped_model, shipped_starts = pretrained_paths("HalfCheetah-v4")
parser.add_argument("--world-model", default=shipped_model, help="world model file [default: shipped]")
parser.add_argument("--start-states", default=shipped_starts, help="real start states (EpisodeBuffer .npz)")
args = parser.parse_args()
torch.set_num_threads(1)  # small networks: one thread is fastest on a small, shared CPU

env = make_imagined_vec_env("HalfCheetah-v4", n_envs=64, world_model=args.world_model,
                            start_states=args.start_states)
horizon = env.get_attr("horizon")[0]  # steps per imagined episode: 5 for the shipped model
model = PPO("MlpPolicy", env, n_steps=horizon, batch_size=64, seed=0, verbose=1)
model.learn(total_timesteps=args.steps)

eval_env = Monitor(gym.make("HalfCheetah-v4"))
mean, std = evaluate_policy(model, eval_env, n_eval_episodes=3, deterministic=True)
print(f"real HalfCheetah-v4 return after {args.steps} imagined steps: {mean:.1f} +- {std:.1f}")
