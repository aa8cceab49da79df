from sentune.cli import main

main()
