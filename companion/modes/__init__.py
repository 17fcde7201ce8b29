"""Turn-taking: continue (call and response), accompany (incl. harmonize), jam."""
