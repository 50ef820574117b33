"""SB3 PPO on HalfCheetah-v4, with SB3's default settings. Twins: model_free_ppo.py learns on the real
task; imagination_ppo.py learns in imagination, on the world model shipped with the package, and needs
no real step (its policy also z-scores observations by the imagined start states, saved with it).
They differ in one import line: `diff examples/model_free_ppo.py examples/imagination_ppo.py`.

    python examples/model_free_ppo.py --steps 5000
    python examples/imagination_ppo.py --steps 5000
"""
import argparse

import gymnasium as gym
import torch
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

# isort: split
from stable_baselines3 import PPO  # the twins' one different line

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--steps", type=int, default=5_000, help="steps to learn from [default 5000]")
args = parser.parse_args()
torch.set_num_threads(1)  # small networks: one thread is fastest on a small, shared CPU

model = PPO("MlpPolicy", "HalfCheetah-v4", seed=0, verbose=1)
model.learn(total_timesteps=args.steps)

eval_env = Monitor(gym.make("HalfCheetah-v4"))
mean, std = evaluate_policy(model, eval_env, n_eval_episodes=3, deterministic=True)
print(f"{type(model).__name__}: real HalfCheetah-v4 return {mean:.1f} +- {std:.1f} "
      f"after {model.num_timesteps} steps of learning")
