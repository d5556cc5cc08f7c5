"""Model files → typed, validated models, with file:line for every problem."""
