"""twinhub.hubconf"""
