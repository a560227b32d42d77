"""What a deploy ships (issue 13): the commits and pull requests between the
live version and the requested one, read from GitHub or a local git mirror;
whether its artifacts exist (its git tag, its image in an OCI registry);
and GitHub Deployments mirroring Slipway's deploys.

Lookups run after the ack, never in it. No Slack here: the views draw what
is stored."""
