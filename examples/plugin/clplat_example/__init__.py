"""Example clplatform plugin: the ``shapes`` stream and the ``partial-finetune`` strategy."""
