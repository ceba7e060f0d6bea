"""Built-in flowkit plugins, registered through entry points like any third-party plugin."""
