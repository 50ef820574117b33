"""imagined-env: PolyGRAD trajectory-diffusion world models as Gymnasium vector environments.

Importing the package registers `Imagined-HalfCheetah-v4` (and Hopper, Walker2d; v4 and v5) with
Gymnasium; `gym.make("imagined_env:Imagined-HalfCheetah-v4")` imports it for you.
"""
from imagined_env.registration import register_envs

__version__ = "0.1.0"

register_envs()
