"""The weights an attention layer holds for its score modifiers."""


def score_weights(layer, modifiers, num_heads):
    """Trainable float weights for the modifiers' `weight_shapes`, zeros to
    start, created on `layer` in sorted name order.

    Modifiers that name the same weight share it (two `RelativeBias` of
    one name, in one layer).

    Returns:
        `{name: variable}`.

    Raises:
        ValueError: when two modifiers name one weight with different
            shapes.
    """
    shapes, owners = {}, {}
    for modifier in modifiers:
        for name, shape in modifier.weight_shapes(num_heads).items():
            shape = tuple(shape)
            if name in shapes and shapes[name] != shape:
                raise ValueError(
                    f"Score modifiers {owners[name]} and {modifier} would "
                    f"share the weight {name!r} with different shapes "
                    f"{shapes[name]} and {shape}; give them different names"
                )
            shapes[name], owners[name] = shape, modifier
    return {
        name: layer.add_weight(
            shape=shapes[name],
            initializer="zeros",
            trainable=True,
            name=name,
        )
        for name in sorted(shapes)
    }
