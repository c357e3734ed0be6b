from tidehub.cli import main

# Guarded: worker processes (`serve --workers N`) import this module again under another name.
if __name__ == "__main__":
    main()
