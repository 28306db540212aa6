"""What a campaign is: specs, segments over customer features, policies, rendering, local time
and settings. Imports nothing but `store`."""
