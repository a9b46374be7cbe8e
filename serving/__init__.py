"""statlane runtime: gateway, spool, job store, scheduler, executor, backends and the CLI."""
