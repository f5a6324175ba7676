NATIVE_RECIPES: dict[str, type] = {}
