from .lifeline import die_with_parent

if __name__ == "__main__":
    die_with_parent()  # a run a sweep started ends with the sweep
    from .cli import cli_main

    cli_main()
