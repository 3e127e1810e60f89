from edgefleet.launch import main

main()
