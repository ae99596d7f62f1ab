"""Cloud infrastructure tooling: the CloudFormation templates in infra_templates/ and their checks.

Nothing here imports the science (raki, torch): it runs where the templates are written and
deployed, and starts fast.
"""
