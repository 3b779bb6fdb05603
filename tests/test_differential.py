"""Partial publishing against a model, on a real cluster: a few hundred
random, seeded steps (tests/differential.py says what they are), after
each of which every read node serves exactly what the model computes from
the team's data, and no value that was never public is in any byte of any
read node. ``scripts/differential --seed N --steps M`` runs longer."""

from differential import Differential

SEED = 1717
STEPS = 300


def test_every_read_node_serves_exactly_the_projection_after_every_step(cluster, control, token):
    run = Differential(cluster, control, token, seed=SEED)
    try:
        run.run_steps(STEPS)
    finally:
        run.clean_up()
        run.close()
