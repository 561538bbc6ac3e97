"""The two C element types and their function-name suffixes.  Kept apart from the C
printer so a warm kernel load imports no SymPy printing machinery."""

CTYPES = {"float32": "float", "float64": "double"}
SUFFIX = {"float32": "f32", "float64": "f64"}
