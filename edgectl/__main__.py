from edgectl.entry import main

main()
