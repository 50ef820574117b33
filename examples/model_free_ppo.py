"""SB3 PPO for HalfCheetah-v4, trained on the real task.
Twin of imagination_ppo.py: `diff` the two to see what makes a learner train in imagination.

    python examples/model_free_ppo.py --steps 5000
"""
import argparse

import gymnasium as gym
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--steps", type=int, default=5_000, help="steps to learn from [default 5000]")
args = parser.parse_args()
torch.set_num_threads(1)  # small networks: one thread is fastest on a small, shared CPU

env = make_vec_env("HalfCheetah-v4", n_envs=1)
model = PPO("MlpPolicy", env, n_steps=512, batch_size=64, seed=0, verbose=1)
model.learn(total_timesteps=args.steps)

eval_env = Monitor(gym.make("HalfCheetah-v4"))
mean, std = evaluate_policy(model, eval_env, n_eval_episodes=3, deterministic=True)
print(f"real HalfCheetah-v4 return after {args.steps} real steps: {mean:.1f} +- {std:.1f}")
