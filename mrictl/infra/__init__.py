"""Cloud infrastructure tooling: the CloudFormation templates in infra_templates/, their checks
and the stacks made from them.

- `validate`: `mrictl infra validate`, cfn-lint, checkov and our own rules on the templates.
- `stacks`: the stacks in order, the stack prefix rule and the parameters each stack is given.
- `cloudformation`: reading a prefix's stacks and following each change through its events.
- `provision`: `mrictl provision` (plan, create or update) and `provision status`.
- `destroy`: `mrictl provision destroy`, keeping the data unless asked.
- `stack_settings`: the per-prefix settings file (the stacks' outputs, the gateway's share).
- `lambda_package`: the scaling Lambda's deterministic zip (mrictl.autoscale) and its upload.
- `gateway`: `mrictl provision gateway`, a file share on an S3 File Gateway.

Nothing here imports the science (raki, torch): it runs where the templates are written and
deployed, and starts fast.
"""
