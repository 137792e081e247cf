"""A fixed A2C batch of 16 samples whose masked (invalid) samples all sit in the first half, so that
ranks hold different numbers of valid samples; and the plain-autograd loss it is checked against."""

import torch

import a2c_allreduce_atari as a2c

CLIP = 0.05
"""the gradient clip of the --debug-clip-per-rank check: below the norm of every shard's gradient"""


def fixed_batch():
    torch.manual_seed(0)
    agent = a2c.Agent(num_actions=6)
    g = torch.Generator().manual_seed(123)
    obs = torch.randint(0, 256, (16, 4, 84, 84), generator=g, dtype=torch.uint8)
    actions = torch.randint(0, 6, (16,), generator=g)
    returns = torch.randn(16, generator=g)
    valid = torch.ones(16)
    valid[[1, 2, 5]] = 0.0
    return agent, (obs, actions, returns, valid)


def rmsprop(agent, args):
    return torch.optim.RMSprop(agent.parameters(), lr=1e-3, alpha=args.rmsprop_alpha, eps=args.rmsprop_eps)


def reference_loss(agent, obs, actions, returns, valid, args):
    """The A2C loss written out directly: means over the valid samples of the whole batch."""
    logits, values = agent(obs)
    dist = torch.distributions.Categorical(logits=logits)
    idx = valid.bool()
    advantages = (returns - values).detach()
    return (
        -(advantages * dist.log_prob(actions))[idx].mean()
        + args.vf_coef * ((returns - values) ** 2)[idx].mean()
        - args.ent_coef * dist.entropy()[idx].mean()
    )
