"""Services every stage uses and none owns: argument checks, the torch device, kill-safe writes,
manifests, JSON and safetensors helpers, seeding and the tables results render as."""
