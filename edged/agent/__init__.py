"""The agent: rules, descriptions and answers about live frames, from one inference thread."""
